"""User feedback: row validation (`schema`) and getting rows into the database (`importer`)."""

from common.feedback.importer import ImportSummary, import_feedback_file, record_feedback, record_feedback_rows
from common.feedback.schema import FEEDBACK_VALUES, FeedbackRow, content_hash, parse_line, validate_row

__all__ = [
    "FEEDBACK_VALUES",
    "FeedbackRow",
    "ImportSummary",
    "content_hash",
    "import_feedback_file",
    "parse_line",
    "record_feedback",
    "record_feedback_rows",
    "validate_row",
]
