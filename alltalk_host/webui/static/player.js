// Playing generated speech: a whole WAV file in an <audio> element, or a stream of raw PCM
// chunks scheduled back to back through the Web Audio API (MediaSource does not take WAV).
// A streamed clip becomes a WAV file at the end, so it can be sought and downloaded like any.

export class Player {
  constructor(audio) {
    this.audio = audio;
    this.context = null;
    this.sources = [];
    this.url = null;
  }

  /** Create or resume the AudioContext: call from the click that starts speaking, so the
   * browser's autoplay policy lets it play. */
  prime() {
    if (!this.context) this.context = new AudioContext();
    if (this.context.state === "suspended") this.context.resume();
  }

  /** Read a response of raw 16-bit little-endian mono PCM at ``rate`` and play it as it comes.
   * ``onFirst`` is called when the first samples arrive. Resolves to all samples (Int16Array). */
  async stream(resp, rate, onFirst) {
    this.prime();
    const ctx = this.context;
    const reader = resp.body.getReader();
    const chunks = [];
    let carry = null; // an odd byte left over from the previous chunk
    let next = 0;
    let total = 0;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      let bytes = value;
      if (carry !== null) {
        bytes = new Uint8Array(value.length + 1);
        bytes[0] = carry;
        bytes.set(value, 1);
        carry = null;
      }
      if (bytes.length % 2) {
        carry = bytes[bytes.length - 1];
        bytes = bytes.subarray(0, bytes.length - 1);
      }
      if (!bytes.length) continue;
      const samples = new Int16Array(bytes.slice().buffer);
      if (!total) onFirst();
      total += samples.length;
      chunks.push(samples);
      const buffer = ctx.createBuffer(1, samples.length, rate);
      const channel = buffer.getChannelData(0);
      for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(ctx.destination);
      // Back to back; a chunk that arrives late starts a little after now instead of in the past.
      next = Math.max(next, ctx.currentTime + 0.05);
      source.start(next);
      next += buffer.duration;
      this.sources.push(source);
      source.onended = () => { this.sources = this.sources.filter((s) => s !== source); };
    }
    const all = new Int16Array(total);
    let at = 0;
    for (const c of chunks) {
      all.set(c, at);
      at += c.length;
    }
    return all;
  }

  /** Show ``blob`` in the <audio> element (seek, download) and play it unless told not to. */
  load(blob, play = true) {
    this.url = URL.createObjectURL(blob); // kept: the clip history replays it
    this.audio.src = this.url;
    if (play) this.audio.play().catch(() => {});
    return this.url;
  }

  /** Stop everything playing: scheduled stream chunks and the <audio> element. */
  stop() {
    for (const source of this.sources) {
      try {
        source.stop();
      } catch {
        // already ended
      }
    }
    this.sources = [];
    this.audio.pause();
  }
}

/** A 16-bit mono WAV file from samples. */
export function wavBlob(samples, rate) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (at, s) => [...s].forEach((c, i) => header.setUint8(at + i, c.charCodeAt(0)));
  const size = samples.length * 2;
  text(0, "RIFF");
  header.setUint32(4, 36 + size, true);
  text(8, "WAVE");
  text(12, "fmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, rate, true);
  header.setUint32(28, rate * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  text(36, "data");
  header.setUint32(40, size, true);
  return new Blob([header.buffer, samples.buffer], {type: "audio/wav"});
}

/** Seconds of audio in a WAV file, from its header (fmt rate and data size). */
export async function wavSeconds(blob) {
  const view = new DataView(await blob.slice(0, 4096).arrayBuffer());
  let at = 12;
  let bytesPerSecond = 0;
  while (at + 8 <= view.byteLength) {
    const id = String.fromCharCode(...new Uint8Array(view.buffer, at, 4));
    const size = view.getUint32(at + 4, true);
    if (id === "fmt ") bytesPerSecond = view.getUint32(at + 16, true);
    if (id === "data") return bytesPerSecond ? Math.min(size, blob.size - at - 8) / bytesPerSecond : 0;
    at += 8 + size + (size % 2);
  }
  return 0;
}
