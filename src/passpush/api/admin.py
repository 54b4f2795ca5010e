"""AdminService: API keys of the caller's project."""

from __future__ import annotations

from typing import Any

import grpc

from passpush.api.convert import timestamp
from passpush.api.interceptors import current_project
from passpush.domain.auth import ApiKey
from passpush.service.keys import KeyCore
from passpush.v1 import admin_pb2 as pb
from passpush.v1 import admin_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, keys: KeyCore) -> None:
        self._keys = keys

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        key, plaintext = await self._keys.create_key(
            current_project(), request.api_key.display_name, request.api_key.scopes
        )
        return pb.CreateApiKeyResponse(api_key=api_key_to_proto(key), key=plaintext)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Context
    ) -> pb.ListApiKeysResponse:
        page = await self._keys.list_keys(current_project(), request.page_size, request.page_token)
        return pb.ListApiKeysResponse(
            api_keys=[api_key_to_proto(k) for k in page.items],
            next_page_token=page.next_page_token,
        )

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Context) -> pb.ApiKey:
        key = await self._keys.revoke_key(current_project(), request.id)
        return api_key_to_proto(key)


def api_key_to_proto(key: ApiKey) -> pb.ApiKey:
    return pb.ApiKey(
        id=key.id,
        project_id=key.project_id,
        display_name=key.name,
        scopes=sorted(key.scopes),
        create_time=timestamp(key.create_time),
        revoke_time=timestamp(key.revoke_time),
    )
