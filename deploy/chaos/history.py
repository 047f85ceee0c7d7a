"""Transitional: `audit_format.py` (still here) reads its lines with `bkv_chaos.history`'s helpers.

Goes when `audit_format` moves into its common package (issue 18); nothing else imports this.
"""

from bkv_chaos.history import (
    get_choice,
    get_float,
    get_opt_hex,
    get_opt_int,
    get_str,
    parse_jsonl,
)

__all__ = ["get_choice", "get_float", "get_opt_hex", "get_opt_int", "get_str", "parse_jsonl"]
