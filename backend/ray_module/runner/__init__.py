"""The job runner actor (``job_runner``) and the driver's interface to it (``client``)."""
