"""Self-supervised pretraining of small encoders on this project's frames: the MAE model
(:mod:`robo_s2.pretraining.mae`), the pretrainer behind ``robo-s2 pretrain``
(:mod:`robo_s2.pretraining.pretrainer`) and the linear probe that scores its features
(:mod:`robo_s2.pretraining.probe`).
"""
