"""Read-only trader-side OB engine over DOLPHIN_OBF_FEATURES."""
