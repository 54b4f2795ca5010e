"""An HTTP process's registrations, written by the parent: each goes up the child's stdout
and waits for the parent's answer on its stdin (http/processes.py). Here the pipe up is a
real pipe, and the test plays the parent."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import pytest

from passpush.domain.errors import Unavailable
from passpush.http.processes import REGISTER, ParentPipe, ParentRegistrar
from passpush.store.registration_writes import NewRegistration

REGISTRATION = NewRegistration("acme", "p1", "device-1", "ab" * 32)


@pytest.fixture
async def pipe_up() -> AsyncIterator[tuple[ParentPipe, asyncio.StreamReader]]:
    """The child's pipe to its parent, and the parent's end of it."""
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(write_end, "wb"))
    parent_side = asyncio.StreamReader()
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(parent_side), os.fdopen(read_end, "rb")
    )
    try:
        yield ParentPipe(transport), parent_side
    finally:
        transport.close()
        read_transport.close()


async def test_a_registration_is_answered_by_the_parent(
    pipe_up: tuple[ParentPipe, asyncio.StreamReader],
) -> None:
    pipe, parent_side = pipe_up
    registrar = ParentRegistrar(pipe)
    registering = asyncio.create_task(registrar.register(REGISTRATION))
    async with asyncio.timeout(10):
        line = await parent_side.readline()
    asked = json.loads(line.removeprefix(REGISTER))
    registrar.answered(json.dumps({"n": asked["n"], "created": True}).encode())
    async with asyncio.timeout(10):
        assert await registering is True
    assert asked == {"n": asked["n"], **vars(REGISTRATION)}


async def test_a_registration_the_parent_never_answers_is_unavailable_in_time(
    pipe_up: tuple[ParentPipe, asyncio.StreamReader],
) -> None:
    """The parent's database stuck: the device is told to come back (503) once the answer is
    overdue, rather than held for ever."""
    pipe, parent_side = pipe_up
    registrar = ParentRegistrar(pipe, answer_within=0.2)
    async with asyncio.timeout(10):
        with pytest.raises(Unavailable) as raised:
            await registrar.register(REGISTRATION)
        assert await parent_side.readline()  # it did go up
    assert raised.value.reason == "DATABASE_UNAVAILABLE"
    # An answer that comes after is for no one: nothing fails on it.
    registrar.answered(json.dumps({"n": 0, "created": True}).encode())
