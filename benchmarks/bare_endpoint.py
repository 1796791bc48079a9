"""The floor for the serving benchmark: a bare ASGI endpoint that only runs XGBoost ``inplace_predict`` on a
fixed feature vector with the champion's booster. No validation, no features, no store, no framework; the
bearer token (``BARE_TOKEN``, if set) checked as the service checks it.

``uvicorn benchmarks.bare_endpoint:app --port N`` (the booster file is ``BARE_BOOSTER``).
"""

from __future__ import annotations

import hmac
import json
import os

import numpy as np
import xgboost as xgb

_booster = xgb.Booster(model_file=os.environ["BARE_BOOSTER"])
_booster.set_param({"nthread": 1})
_x = np.full((1, _booster.num_features()), 1.0)
_booster.inplace_predict(_x)
_token = os.environ.get("BARE_TOKEN", "").encode() or None


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:  # drain the request body, as a real endpoint must
        more = (await receive()).get("more_body", False)
    if _token is not None:
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if not (auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), _token)):
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
    body = json.dumps({"fraud_probability": float(_booster.inplace_predict(_x)[0])}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
