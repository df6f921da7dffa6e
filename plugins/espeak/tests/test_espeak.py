"""The espeak backend keeps alltalk-host's backend contract (run: pytest)."""

from alltalk_host.testing import assert_conforms

from alltalk_host_espeak import EspeakBackend


def test_the_backend_keeps_the_contract():
    # Add your model's settings, and settings it must refuse, as your backend grows.
    assert_conforms(EspeakBackend, {"pitch_hz": 140}, bad_settings=[{"sample_rate": 1}])
