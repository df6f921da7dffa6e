"""The Wyoming front-end: Home Assistant's protocol for local speech, beside the HTTP one.

A second front-end over the same core (``Host``, ``SpeechService``), with no web framework:
``server.py`` accepts connections on sockets bound by the caller, ``connection.py`` reads a
connection's events within the limits (``events.py`` reads one event and names its mistakes),
``handler.py`` answers them, ``voices.py`` says which voices this host serves and what a voice
name means, ``sentences.py`` cuts text that arrives in pieces into sentences, ``announce.py``
announces the server on the local network (zeroconf) when asked to.
"""
