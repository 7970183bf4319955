"""The life domain module: wellness check-ins (entries) and each subject's daily summary.

Its own tables (models), the writes its workflow's steps make through the `life.*` actions
(workflow) and the reads the API answers with (queries).
"""
