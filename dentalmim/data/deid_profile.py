"""The action table of :mod:`dentalmim.data.deid`, after DICOM PS3.15 Annex E (Basic Application Level
Confidentiality Profile, Table E.1-1), restricted to attributes that occur in radiograph objects.

Actions follow the profile's letters: ``X`` remove, ``Z`` keep the element but empty it, ``D`` replace with a
dummy/pseudonymous value, ``U`` replace a UID consistently, ``K`` keep. Where the profile allows a choice
(``X/Z``, ``Z/D``...) the most conservative one that keeps the object valid is taken. On top of the table,
:mod:`dentalmim.data.deid` applies catch-all rules: every person name, date/time, free-text (LT/ST/UT) and
unknown-VR element is removed unless listed in :data:`KEEP`, all private tags and overlay/curve groups are
removed, and every instance UID is replaced.
"""

from __future__ import annotations

#: keyword -> action. Only the table's letters X, Z, D, U appear here; K is expressed by :data:`KEEP`.
ACTIONS: dict[str, str] = {
    # patient identity (PatientName / PatientID become a salted pseudonym: "D")
    "PatientName": "D", "PatientID": "D", "PatientBirthDate": "Z", "PatientSex": "Z",
    "PatientBirthTime": "X", "PatientAge": "X", "PatientSize": "X", "PatientWeight": "X", "PatientAddress": "X",
    "PatientTelephoneNumbers": "X", "PatientMotherBirthName": "X", "PatientBirthName": "X",
    "OtherPatientIDs": "X", "OtherPatientNames": "X", "OtherPatientIDsSequence": "X", "IssuerOfPatientID": "X",
    "IssuerOfPatientIDQualifiersSequence": "X", "MilitaryRank": "X", "BranchOfService": "X",
    "MedicalRecordLocator": "X", "EthnicGroup": "X", "Occupation": "X", "AdditionalPatientHistory": "X",
    "PatientComments": "X", "PatientReligiousPreference": "X", "PatientInsurancePlanCodeSequence": "X",
    "PatientPrimaryLanguageCodeSequence": "X", "ResponsiblePerson": "X", "ResponsibleOrganization": "X",
    "CountryOfResidence": "X", "RegionOfResidence": "X", "PatientState": "X", "PregnancyStatus": "X",
    "SmokingStatus": "X", "MedicalAlerts": "X", "Allergies": "X", "LastMenstrualDate": "X",
    "PatientTransportArrangements": "X", "ReferencedPatientSequence": "X", "ReferencedPatientPhotoSequence": "X",
    # study / visit / request
    "StudyDate": "Z", "StudyTime": "Z", "AccessionNumber": "Z", "StudyID": "Z", "ReferringPhysicianName": "Z",
    "StudyDescription": "X", "ReferringPhysicianAddress": "X", "ReferringPhysicianTelephoneNumbers": "X",
    "ReferringPhysicianIdentificationSequence": "X", "PhysiciansOfRecord": "X",
    "PhysiciansOfRecordIdentificationSequence": "X", "NameOfPhysiciansReadingStudy": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X", "ConsultingPhysicianName": "X",
    "AdmittingDiagnosesDescription": "X", "AdmittingDiagnosesCodeSequence": "X", "AdmissionID": "X",
    "IssuerOfAdmissionIDSequence": "X", "RequestingPhysician": "X", "RequestingService": "X",
    "RequestedProcedureDescription": "X", "RequestedProcedureID": "X", "RequestAttributesSequence": "X",
    "ReasonForStudy": "X", "ReasonForTheRequestedProcedure": "X", "StudyComments": "X", "InterpretationAuthor": "X",
    "ReferencedStudySequence": "X", "ServiceEpisodeID": "X", "ServiceEpisodeDescription": "X",
    "ProcedureCodeSequence": "X", "ScheduledPerformingPhysicianName": "X", "OrderEnteredBy": "X",
    "OrderEntererLocation": "X", "OrderCallbackPhoneNumber": "X", "PlacerOrderNumberImagingServiceRequest": "X",
    "FillerOrderNumberImagingServiceRequest": "X",
    # series / procedure step / operators
    "SeriesDate": "X", "SeriesTime": "X", "SeriesDescription": "X", "ProtocolName": "X",
    "PerformingPhysicianName": "X", "PerformingPhysicianIdentificationSequence": "X", "OperatorsName": "X",
    "OperatorIdentificationSequence": "X", "PerformedProcedureStepID": "X",
    "PerformedProcedureStepDescription": "X", "PerformedProcedureStepStartDate": "X",
    "PerformedProcedureStepStartTime": "X", "PerformedProcedureStepEndDate": "X",
    "PerformedProcedureStepEndTime": "X", "PerformedLocation": "X", "PerformedStationName": "X",
    "PerformedStationAETitle": "X", "ScheduledStationName": "X", "ScheduledStationAETitle": "X",
    "ScheduledProcedureStepID": "X", "ScheduledProcedureStepDescription": "X",
    "ReferencedPerformedProcedureStepSequence": "X", "CommentsOnThePerformedProcedureStep": "X",
    # equipment and institution
    "InstitutionName": "X", "InstitutionAddress": "X", "InstitutionalDepartmentName": "X",
    "InstitutionCodeSequence": "X", "StationName": "X", "DeviceSerialNumber": "X", "DetectorID": "X",
    "PlateID": "X", "CassetteID": "X", "GantryID": "X", "DeviceDescription": "X", "DeviceUID": "U",
    "ContributingEquipmentSequence": "X",
    # image / instance
    "ContentDate": "Z", "ContentTime": "Z", "ContentCreatorName": "Z", "AcquisitionDate": "X",
    "AcquisitionTime": "X", "AcquisitionDateTime": "X", "InstanceCreationDate": "X", "InstanceCreationTime": "X",
    "InstanceCreatorUID": "U", "ImageComments": "X", "FrameComments": "X", "DerivationDescription": "X",
    "AcquisitionComments": "X", "AcquisitionContextSequence": "X", "AcquisitionDeviceProcessingDescription": "X",
    "IconImageSequence": "X", "OverlayComments": "X", "TextComments": "X", "TextString": "X",
    "DigitalSignaturesSequence": "X", "MACParametersSequence": "X", "OriginalAttributesSequence": "X",
    "ModifiedAttributesSequence": "X", "ContentCreatorIdentificationCodeSequence": "X", "PersonAddress": "X",
    "PersonTelephoneNumbers": "X", "VerifyingObserverName": "X", "VerifyingObserverSequence": "X",
    "StorageMediaFileSetUID": "U", "StorageMediaFileSetID": "X", "SourceApplicationEntityTitle": "X",
    "SendingApplicationEntityTitle": "X", "ReceivingApplicationEntityTitle": "X",
    "PrivateInformationCreatorUID": "X", "PrivateInformation": "X", "RetrieveAETitle": "X",
    "StationAETitle": "X", "ClinicalTrialSponsorName": "X", "ClinicalTrialSubjectID": "X",
}

#: What training and display need; never removed by the catch-all rules.
KEEP: frozenset[str] = frozenset({
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "Modality", "Manufacturer", "ManufacturerModelName",
    "SoftwareVersions", "BodyPartExamined", "ImageLaterality", "Laterality", "PatientOrientation",
    "PresentationIntentType", "ViewPosition", "AnatomicRegionSequence", "PrimaryAnatomicStructureSequence",
    "PixelSpacing", "ImagerPixelSpacing", "PixelSpacingCalibrationType", "EstimatedRadiographicMagnificationFactor",
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PixelData", "NumberOfFrames", "PixelAspectRatio",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "VOILUTSequence", "WindowCenter",
    "WindowWidth", "VOILUTFunction", "WindowCenterWidthExplanation", "PresentationLUTShape",
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod", "BurnedInAnnotation",
    "KVP", "ExposureTime", "XRayTubeCurrent", "Exposure", "DistanceSourceToDetector", "DetectorType",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified", "CodeValue", "CodingSchemeDesignator", "CodeMeaning",
    "CodingSchemeVersion", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber",
    "SeriesNumber", "FileMetaInformationVersion", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
    "TransferSyntaxUID", "ImplementationClassUID", "ImplementationVersionName", "FileMetaInformationGroupLength",
})

#: UID attributes naming classes or syntaxes, not instances: kept as they are.
KEEP_UIDS: frozenset[str] = frozenset({
    "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "ImplementationClassUID", "ReferencedTransferSyntaxUIDInFile", "ReferencedSOPClassUIDInFile",
    "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID", "SOPClassesInStudy", "CodingSchemeUID",
    "MappingResourceUID",
})

#: Value representations removed unless the keyword is kept (names, dates/times, free text, unknown).
CATCH_ALL_VRS: frozenset[str] = frozenset({"PN", "DA", "DT", "TM", "LT", "ST", "UT", "UN"})

#: PS3.16 CID 7050 code of the profile applied.
PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
