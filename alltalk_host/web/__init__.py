"""The aiohttp front-end: thin handlers over the core (``alltalk_host.host.Host``)."""
