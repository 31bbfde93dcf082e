-- Auto-routing as a hospital PACS would do it: every study that became stable in Orthanc is
-- sent to the modality "proxyseg" (DicomModalities in orthanc.json.in), unless it already holds
-- a series of Modality SEG. proxyseg's results come back into the same study, which then turns
-- stable again: without this check each result would be routed back to proxyseg (a loop).
--
-- The "proxyseg-route:" lines are part of the test's contract (tests/pipeline/e2e_orthanc.rs greps them).

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for _, s in ipairs(series) do
    if s['MainDicomTags']['Modality'] == 'SEG' then
      print('proxyseg-route: skip ' .. studyId .. ' (holds SEG series ' .. s['ID'] .. ')')
      return
    end
  end
  print('proxyseg-route: sending ' .. studyId .. ' (' .. #series .. ' series)')
  -- Synchronous: a failed C-STORE raises a Lua error, logged by Orthanc with the study id.
  RestApiPost('/modalities/proxyseg/store',
              DumpJson({ Resources = { studyId }, Synchronous = true }, true))
  print('proxyseg-route: sent ' .. studyId)
end
