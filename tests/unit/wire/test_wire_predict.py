"""PREDICT and its OK (rlmesh.wire.protocol): round trips, and malformed messages refused once."""

from __future__ import annotations

from typing import Any

import pytest

from rlmesh import errors
from rlmesh.wire import protocol as P
from rlmesh.wire.codec import decode, pack


def test_predict_round_trips_through_msgpack() -> None:
    request = P.Predict(7, [1.0, 2.0], 3, True, {"episode_id": "e", "episode_seed": 4}, [1, 2, 3, 4])
    wire = decode(pack(request.to_wire()))
    assert wire[0] == P.PREDICT
    assert P.parse_request(wire) == request
    answer = P.PredictOk.from_wire(decode(pack(P.Ok(7, [5]).to_wire())))
    assert answer == P.PredictOk(7, 5)


@pytest.mark.parametrize(
    "message",
    [
        [P.PREDICT, 1, None, 0, False, None],  # too short
        [P.PREDICT, "1", None, 0, False, None, []],  # rid not an int
        [P.PREDICT, 1, None, -1, False, None, []],  # negative lanes
        [P.PREDICT, 1, None, 1.5, False, None, []],  # lanes not an int
        [P.PREDICT, 1, None, 0, 1, None, []],  # reset not a bool
        [P.PREDICT, 1, None, 0, False, [1], []],  # context not a map
        [P.PREDICT, 1, None, 0, False, None, {"a": 1}],  # releases not a list
    ],
)
def test_malformed_predicts_are_protocol_errors(message: list[Any]) -> None:
    with pytest.raises(errors.ProtocolError):
        P.parse_request(message)


def test_a_predict_answer_of_the_wrong_length_is_a_protocol_error() -> None:
    with pytest.raises(errors.ProtocolError):
        P.PredictOk.from_wire([P.OK, 1])


def test_model_error_codes_map_onto_the_error_tree() -> None:
    bad_obs = P.Error(1, P.E_INVALID_OBSERVATION, "", "invalid observation: shape (3,)", "").to_exception(
        "predict"
    )
    assert type(bad_obs) is errors.SpecError and "shape (3,)" in str(bad_obs)
    raised = P.Error(1, P.E_MODEL, "KeyError", "'w'", "Traceback...").to_exception("predict")
    assert isinstance(raised, errors.RemoteError)
    assert str(raised).startswith("the served model raised KeyError in predict")
    assert raised.remote_traceback == "Traceback..."
