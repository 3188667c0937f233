-- Argo CD health of a hone.dev/v1alpha1 FineTuneJob (resource.customizations.health.hone.dev_FineTuneJob).
hs = {}
local st = obj.status
if st == nil or st.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Hone operator to pick the job up"
  return hs
end
if obj.metadata.generation ~= nil and st.observedGeneration ~= nil and st.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "The operator has not acted on the latest spec yet"
  return hs
end
local phase = st.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  local name = ""
  if st.fineTunedModel ~= nil and st.fineTunedModel.name ~= nil then name = st.fineTunedModel.name end
  hs.message = "Fine-tuned model " .. name .. " published"
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "Failed"
  if st.error ~= nil and st.error.message ~= nil then hs.message = st.error.message end
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend): checkpoints are kept"
elseif phase == "Cancelled" then
  hs.status = "Suspended"
  hs.message = "Cancelled (spec.cancel)"
elseif phase == "Queued" and st.conditions ~= nil and (function()
    for _, c in ipairs(st.conditions) do
      if c.type == "MemoryFits" and c.status == "False" and c.reason == "InsufficientMemory" then
        hs.message = c.message
        return true
      end
    end
    return false
  end)() then
  -- Held: it does not fit in memory, and only an edit of the spec gets it going.
  hs.status = "Degraded"
elseif phase == "Running" then
  hs.status = "Progressing"
  hs.message = "Training"
  if st.progress ~= nil and st.progress.percent ~= nil then
    hs.message = "Training: " .. tostring(st.progress.percent) .. "%"
  end
else
  hs.status = "Progressing"
  hs.message = phase
  -- Held by the namespace's TokenBudget: it starts by itself, and the condition says when.
  if phase == "Queued" and st.conditions ~= nil then
    for _, c in ipairs(st.conditions) do
      if c.type == "BudgetAdmitted" and c.status == "False" then hs.message = "Queued: " .. c.message end
    end
  end
end
return hs
