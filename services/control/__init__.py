"""The control plane: schedules, the control topic that carries them, and the rules both the
rendezvous and every CLI command apply to them (one rule, so they agree on what is in force)."""
