"""Scale-out on Ray Serve (the optional ``alltalk-host[ray]`` extra): N replicas of the same core,
a config commit rolled across them as the deployment's ``user_config``.

``replica.py`` (the core told its commit) and ``rollout.py`` (deploying and rolling out through
Ray's REST API) import no Ray; ``front.py`` needs Starlette, which Ray ships; ``deployment.py``
is the only module that imports Ray, and is what Ray imports on its workers.
"""
