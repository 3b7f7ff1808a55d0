"""Users and API keys."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service.core.vocabulary import Role


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    role: Role


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    prefix: str = Field(description="the first characters of the key, to recognise it")
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="the API key; shown once, store it now")


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    active: bool
    created_at: datetime
    keys: list[ApiKeyPublic] = []


class UserCreated(UserPublic):
    key: str = Field(description="the user's first API key; shown once, store it now")


class UsersPublic(BaseModel):
    data: list[UserPublic]
    count: int


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    active: bool | None = None


class Me(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
