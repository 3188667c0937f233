-- Argo CD health of a hone.dev/v1alpha1 ModelServing (resource.customizations.health.hone.dev_ModelServing).
hs = {}
local st = obj.status
if st == nil or st.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Hone operator to pick it up"
  return hs
end
if obj.metadata.generation ~= nil and st.observedGeneration ~= nil and st.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "The operator has not acted on the latest spec yet"
  return hs
end
local ready = nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Ready" then ready = c end
  end
end
local detail = ""
if ready ~= nil and ready.message ~= nil then detail = ready.message end
local phase = st.phase
if phase == "Ready" then
  hs.status = "Healthy"
  hs.message = "Serving at " .. tostring(st.url)
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = detail
elseif phase == "Pending" and ready ~= nil and ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = detail
else
  hs.status = "Progressing"
  hs.message = phase .. ": " .. detail
end
return hs
