// Swagger UI over /openapi.json, from the swagger-ui-bundle package (no CDN, no inline JS).
window.addEventListener("load", () => {
  window.SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger" });
});
