"""Sources: where batches come from (upload folder, SFTP, object store), behind one interface.

Later stages need only these two: the `sources` resource (`Sources`) and `deliver_results`.
"""

from patient_etl.sources.delivery import deliver_results
from patient_etl.sources.resources import Sources

__all__ = ["Sources", "deliver_results"]
