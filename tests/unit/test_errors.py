from __future__ import annotations

import inspect
import pickle

import pytest

from rlmesh import errors

ALL = [obj for _, obj in inspect.getmembers(errors, inspect.isclass) if issubclass(obj, errors.RLMeshError)]


def _instance(cls: type[errors.RLMeshError]) -> errors.RLMeshError:
    if cls is errors.OperationTimeout:
        return cls("request timed out after 0.5s", timeout=0.5)
    if cls is errors.VersionMismatch:
        return cls("protocol 2 vs 1", local=2, remote=1)
    if cls is errors.ShmCapacityError:
        return cls("no room", needed=4096, available=12)
    if cls is errors.RemoteError:
        return cls(
            "env raised ZeroDivisionError: boom",
            remote_type="builtins.ZeroDivisionError",
            remote_message="boom",
            remote_traceback="Traceback (most recent call last):\n  ...\nZeroDivisionError: boom\n",
        )
    return cls(f"a {cls.__name__}")


def test_every_public_error_is_listed() -> None:
    assert sorted(c.__name__ for c in ALL) == sorted(errors.__all__)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_error_survives_pickle(cls: type[errors.RLMeshError]) -> None:
    exc = _instance(cls)
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is cls
    assert str(clone) == str(exc)
    assert clone.args == exc.args
    assert clone.__dict__ == exc.__dict__


def test_pickled_attributes_are_kept() -> None:
    clone = pickle.loads(pickle.dumps(_instance(errors.RemoteError)))
    assert clone.remote_type == "builtins.ZeroDivisionError"
    assert clone.remote_message == "boom"
    assert "ZeroDivisionError: boom" in clone.remote_traceback
    assert pickle.loads(pickle.dumps(_instance(errors.ShmCapacityError))).needed == 4096
    assert pickle.loads(pickle.dumps(_instance(errors.OperationTimeout))).timeout == 0.5


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.OperationTimeout, TimeoutError),
        (errors.TransportError, ConnectionError),
        (errors.ConnectError, ConnectionError),
        (errors.AuthenticationError, ConnectionError),
        (errors.BrokenError, ConnectionError),
        (errors.SpecError, ValueError),
        (errors.InvalidActionError, ValueError),
        (errors.InvalidHandle, ValueError),
        (errors.RemoteError, RuntimeError),
        (errors.ClosedError, RuntimeError),
        (errors.BusyError, RuntimeError),
        (errors.BackendUnavailable, ImportError),
    ],
)
def test_errors_are_also_builtin_categories(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, builtin)
    assert issubclass(cls, errors.RLMeshError)
    with pytest.raises(builtin):
        raise _instance(cls)  # type: ignore[arg-type]


def test_remote_traceback_is_a_note() -> None:
    exc = _instance(errors.RemoteError)
    assert any("ZeroDivisionError: boom" in note for note in getattr(exc, "__notes__", []))
