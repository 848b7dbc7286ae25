"""`make run`: serve the gateway on DISTLM_HOST:DISTLM_PORT (lifespan does the rest)."""

from __future__ import annotations

import uvicorn

from core.settings import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        workers=1,  # the gateway is the single writer of job state
    )


if __name__ == "__main__":
    main()
