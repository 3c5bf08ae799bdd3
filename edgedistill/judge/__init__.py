"""The judge stage: a judge model reads eval replies (pairwise against the teacher's, a rubric, or
against gold), and its own trustworthiness is measured on the same run (:mod:`.stage`)."""
