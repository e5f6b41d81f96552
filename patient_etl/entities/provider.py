"""Provider: a clinician or organization that gives care and bills for it."""

from patient_etl.entities.contact import ADDRESS
from patient_etl.entities.kinds import NPI, PHONE, TAXONOMY
from patient_etl.entities.spec import Entity, Field

PROVIDER = Entity(
    "provider",
    key="provider_id",
    describe="A clinician or organization; care and claims point to it with provider_id.",
    fields=(
        Field("provider_id", aliases=("provider id", "providerId", "id", "external id"),
              describe="your stable ID for the provider; care and claims reference it"),
        Field("provider_name", required=True, aliases=("provider name", "providerName", "name", "full name")),
        Field("npi", NPI, aliases=("npi number", "national provider identifier", "provider npi")),
        Field("taxonomy_code", TAXONOMY, aliases=("taxonomy code", "taxonomy", "nucc taxonomy", "taxonomy id")),
        Field("specialty", aliases=("speciality", "specialty description", "provider specialty")),
        Field("organization_name", aliases=("organization name", "organization", "organisation",
                                            "practice name", "practice", "group name")),
        Field("phone", PHONE, aliases=("phone number", "telephone", "tel", "office phone")),
    ),
    groups=(ADDRESS,),
    referred_as=("provider id", "providerId", "provider", "rendering provider id"),
)
