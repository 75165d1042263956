"""The exception hierarchy: one class per Sheepdog result code."""

from __future__ import annotations

import pytest

from sheepdog_backend import exception as exc
from sheepdog_backend.protocol.constants import RESULT_MESSAGES, Result, result_message


def test_every_result_code_maps_to_exactly_one_class() -> None:
    codes = [r for r in Result if r != Result.SUCCESS]
    registered = exc.registered_codes()
    assert set(registered) == set(codes)
    classes = list(registered.values())
    assert len(set(classes)) == len(classes)  # no class serves two codes
    for code in codes:
        cls = exc.error_class_for_code(code)
        assert cls is registered[code]
        assert cls is not None and issubclass(cls, exc.ServerError)
        assert cls.code == code
        error = exc.error_for_code(code)
        assert type(error) is cls and error.code == code and error.result == code
        assert str(error) == result_message(code) == RESULT_MESSAGES[code]


def test_every_server_error_subclass_is_registered() -> None:
    def walk(cls: type[exc.ServerError]) -> list[type[exc.ServerError]]:
        out = []
        for sub in cls.__subclasses__():
            out.append(sub)
            out.extend(walk(sub))
        return out

    abstract = {exc.ServerUnavailable, exc.UnknownServerError}
    # the registry's classes; a layer may refine one for its own use (the
    # gateway's transient NO_OBJ during recovery) without registering a code
    concrete = [c for c in walk(exc.ServerError)
                if c not in abstract and c.__module__ == exc.__name__]
    assert sorted(c.__name__ for c in concrete) == sorted(
        c.__name__ for c in exc.registered_codes().values())


@pytest.mark.parametrize("code", [0x1B, 0x1C, 0x96, 0x9A, 0xFF, 0x12345])
def test_unknown_code_gives_unknown_server_error(code: int) -> None:
    error = exc.error_for_code(code)
    assert type(error) is exc.UnknownServerError
    assert error.code == code and error.result == code
    assert f"{code:#x}" in str(error)
    assert exc.error_class_for_code(code) is None
    assert not error.transient


def test_custom_messages() -> None:
    assert str(exc.error_for_code(Result.NO_VDI, "no VDI vol-1")) == "no VDI vol-1"
    assert str(exc.error_for_code(0x77, "odd")) == "odd"
    assert str(exc.NoVdi()) == "No VDI found"


def test_success_is_not_an_error() -> None:
    with pytest.raises(ValueError):
        exc.error_for_code(0)
    with pytest.raises(ValueError):
        exc.error_for_code(Result.SUCCESS)


@pytest.mark.parametrize(("code", "cls"), [
    (Result.STARTUP, exc.Startup),
    (Result.WAIT_FOR_JOIN, exc.WaitForJoin),
    (Result.WAIT_FOR_FORMAT, exc.WaitForFormat),
    (Result.SHUTDOWN, exc.Shutdown),
    (Result.HALT, exc.Halt),
])
def test_unavailable_states_are_transient(code: int, cls: type[exc.ServerError]) -> None:
    error = exc.error_for_code(code)
    assert type(error) is cls
    assert isinstance(error, exc.ServerUnavailable) and error.transient


@pytest.mark.parametrize("code", [Result.NO_VDI, Result.VDI_EXIST, Result.NO_TAG,
                                  Result.INVALID_PARMS, Result.VER_MISMATCH, Result.READONLY,
                                  Result.NO_OBJ, Result.FULL_VDI])
def test_permanent_errors_are_not_transient(code: int) -> None:
    error = exc.error_for_code(code)
    assert not error.transient and not isinstance(error, exc.ServerUnavailable)


def test_named_classes_used_by_the_layers_above() -> None:
    assert exc.error_class_for_code(Result.NO_VDI) is exc.NoVdi
    assert exc.error_class_for_code(Result.NO_TAG) is exc.NoTag
    assert exc.error_class_for_code(Result.VDI_EXIST) is exc.VdiExists
    assert exc.error_class_for_code(Result.NO_OBJ) is exc.NoObject
    assert exc.error_class_for_code(Result.READONLY) is exc.ReadOnly
    assert exc.error_class_for_code(Result.INVALID_PARMS) is exc.InvalidParameters


def test_hierarchy_roots() -> None:
    for cls in (exc.ProtocolError, exc.TransportError, exc.RetryExhausted, exc.ServerError,
                exc.InvalidInput, exc.ConfigError, exc.ReconcileConflict, exc.VolumeNotFound,
                exc.SnapshotNotFound, exc.VolumeIsBusy, exc.InvalidBackingImage,
                exc.DriverLoadError):
        assert issubclass(cls, exc.SheepdogError)
    for cls in (exc.ConnectTimeout, exc.ReadTimeout, exc.ConnectionClosed,
                exc.NoGatewayAvailable):
        assert issubclass(cls, exc.TransportError)
    assert issubclass(exc.MessageTooLarge, exc.ProtocolError)
    assert issubclass(exc.InvalidPayload, exc.ProtocolError)
    assert issubclass(exc.InvalidPayload, ValueError)
    assert issubclass(exc.InvalidInput, ValueError)
    assert issubclass(exc.InvalidBackingImage, ValueError)
    assert not issubclass(exc.ServerError, exc.TransportError)


def test_protocol_error_remote_flag_and_retry_exhausted() -> None:
    assert exc.ProtocolError("x").remote is True
    assert exc.ProtocolError("x", remote=False).remote is False
    cause = exc.ConnectionClosed("gone")
    retry = exc.RetryExhausted("gave up after 3 attempts", cause)
    assert retry.last_error is cause and str(retry) == "gave up after 3 attempts"
