"""`otter-jax serve`: Otter behind an OpenAI-compatible chat-completions API.

protocol.py parses and validates request bodies, engine.py batches and decodes, http.py is the aiohttp server,
cli.py the command."""
