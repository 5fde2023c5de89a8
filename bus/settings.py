"""Process settings from the environment (`IFBUS_*`), for the commands that talk to a server.

`list`/`add`/`remove` never import this: pydantic-settings alone costs ~150 ms of start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.paths import home
from bus.validate import DEFAULT_TIMEOUT

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IFBUS_", extra="ignore")

    home: Path = Field(default_factory=home, description="folder of sip_servers.json")
    redis_url: str | None = Field(default=None, description="redis:// or rediss:// URL, ACL user included")
    mode: Literal["auto", "queue", "inline"] = Field(
        default="auto", description="auto: Redis when it answers, else in-process; queue: Redis or fail; inline"
    )
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, description="seconds a caller waits for a result")
    log_level: str = "INFO"
    probe_interval: float = Field(default=2.0, ge=0, description="seconds between probes of open servers; 0 = off")

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL
