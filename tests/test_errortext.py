"""An error in one line, whatever its message holds."""

from mlflow.exceptions import MlflowException

from fnnlab.errortext import first_line, reason


def test_an_error_without_a_message_is_named_by_its_type():
    # Its first line once raised IndexError in place of the error being reported.
    assert reason(ConnectionError()) == "ConnectionError"
    assert first_line(ConnectionError("  \n")) == "ConnectionError"


def test_the_first_line_of_a_long_message_and_of_mlflows_without_its_code():
    error = MlflowException("database is locked\n[SQL: INSERT INTO metrics ...]")
    assert reason(error) == "database is locked"
    assert first_line(error) == "MlflowException: database is locked"
    assert len(first_line(RuntimeError("x" * 1000))) == 300
