"""Whole networks in one process: `simulate` (the optimizer alone, over an
in-memory board), `devnet` (real services on 127.0.0.1) with its summary, and
`dissemination` (one window's gathering at internet scale, no sockets; its flows and
fair rates in `flows`).

May import anything; nothing else imports it. It must never listen on or dial
a non-loopback address.
"""
