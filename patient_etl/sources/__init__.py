"""Sources: where batches come from (upload folder, SFTP, object store), behind one interface."""

from patient_etl.sources.delivery import deliver_results

__all__ = ["deliver_results"]
