"""The kernel: what every other part of tiergate is written against.

Generation types (:mod:`.generation`), the backend interface (:mod:`.backend`), the model tuple
(:mod:`.modeltuple`), digests (:mod:`.digests`), the error tree (:mod:`.errors`), credential
redaction (:mod:`.secrets`) and private files (:mod:`.files`). It imports nothing else of the
project (``make lint`` checks it).
"""
