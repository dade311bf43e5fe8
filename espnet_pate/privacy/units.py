"""The privacy units a guarantee can protect: one utterance, or one speaker with all of his or her utterances."""

PRIVACY_UNITS = ("utterance", "speaker")
