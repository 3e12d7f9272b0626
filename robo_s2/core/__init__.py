"""What every stage shares and no stage owns: atomic file writes (:mod:`robo_s2.core.io`)
and worker-process hygiene (:mod:`robo_s2.core.process`)."""
