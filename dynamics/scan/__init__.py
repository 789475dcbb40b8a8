"""`dynamics scan`: the training-dynamics driver (:mod:`.driver`), its per-step worker (:mod:`.worker`)."""
