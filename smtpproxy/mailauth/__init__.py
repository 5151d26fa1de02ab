"""The synchronous mail-authentication libraries (pyspf, dkimpy) on the event loop's terms.

Shared by the scan's checks and the signer: ``bridge`` runs a library in a
worker thread with its DNS answered by the one async Resolver; ``arc``
verifies an ARC chain (the ARC check scores it, the sealer records it).
"""
