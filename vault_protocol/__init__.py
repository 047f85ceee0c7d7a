"""The client<->vault cryptography and message formats. Pure: no I/O, no clocks, no globals."""
