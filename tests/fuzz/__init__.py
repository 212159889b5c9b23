"""Fuzz harness: SFTP packets and SCP control lines into the real handlers (scripts/fuzz)."""
