"""The floor for the serving benchmark: a bare ASGI endpoint that only runs XGBoost ``inplace_predict`` on a
fixed feature vector with the champion's booster. No validation, no features, no store, no framework.

``uvicorn benchmarks.bare_endpoint:app --port N`` (the booster file is ``BARE_BOOSTER``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import xgboost as xgb

_booster = xgb.Booster(model_file=os.environ["BARE_BOOSTER"])
_booster.set_param({"nthread": 1})
_x = np.full((1, _booster.num_features()), 1.0)
_booster.inplace_predict(_x)


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
    body = json.dumps({"fraud_probability": float(_booster.inplace_predict(_x)[0])}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
