"""Wire rules that more than one front uses: the AllTalk and OpenAI-style speech fields, request
bodies, audio encodings and the HTTP boundary. See docs/architecture.md."""
