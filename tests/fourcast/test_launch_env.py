"""The one parser of the launcher's environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``."""

from __future__ import annotations

import pytest

from fourcast.distributed import LAUNCH_VARIABLES, LaunchEnv, main_first, process_group
from fourcast.errors import DistributedSetupError, FourcastError

RENDEZVOUS = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
#: launch environments that are not a launch, and what the error names
BAD = [
    ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **RENDEZVOUS}, r"integer RANK .*found 'x'"),
    (
        {"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0", **RENDEZVOUS},
        r"integer WORLD_SIZE .*found 'two'",
    ),
    (
        {"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **RENDEZVOUS},
        r"0 <= RANK < WORLD_SIZE.*found RANK=2 WORLD_SIZE=2",
    ),
    ({"RANK": "-1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **RENDEZVOUS}, r"found RANK=-1 WORLD_SIZE=2"),
    (
        {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1", **RENDEZVOUS},
        r"found RANK=0 WORLD_SIZE=2 LOCAL_RANK=-1",
    ),
    ({"WORLD_SIZE": "0"}, r"WORLD_SIZE >= 1.*WORLD_SIZE=0"),
    ({"RANK": "1"}, r"found RANK=1 WORLD_SIZE=1"),
    (
        {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_PORT": "29500"},
        r"\['MASTER_ADDR'\] are not set",
    ),
]


@pytest.fixture
def environ(monkeypatch):
    """Set the process environment to exactly the given launch variables."""

    def set_to(env: dict[str, str]) -> None:
        for name in LAUNCH_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return set_to


def test_no_variables_is_one_process_and_torchrun_variables_are_read():
    assert LaunchEnv.from_environ({}) == LaunchEnv(0, 1, 0) and not LaunchEnv.from_environ({}).is_distributed
    launch = LaunchEnv.from_environ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", **RENDEZVOUS})
    assert (launch.rank, launch.world_size, launch.local_rank, launch.is_distributed) == (5, 8, 1, True)


@pytest.mark.parametrize(("env", "message"), BAD)
def test_a_bad_launch_environment_is_one_typed_error(env, message):
    with pytest.raises(DistributedSetupError, match=message) as caught:
        LaunchEnv.from_environ(env)
    assert isinstance(caught.value, FourcastError) and "\n" not in str(caught.value)


def test_values_are_checked_when_built_directly_too():
    with pytest.raises(DistributedSetupError, match="found RANK=3 WORLD_SIZE=2 LOCAL_RANK=0"):
        LaunchEnv(rank=3, world_size=2)


@pytest.mark.parametrize(("env", "message"), BAD)
def test_process_group_and_main_first_refuse_the_same_environments(environ, env, message):
    environ(env)
    with pytest.raises(DistributedSetupError, match=message):
        LaunchEnv.from_environ()
    with pytest.raises(DistributedSetupError, match=message), process_group("cpu"):
        pass
    with pytest.raises(DistributedSetupError, match=message), main_first():
        pass
