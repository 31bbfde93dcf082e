// The browser's URL classes for packages that require('url') (vtk.js -> xmlbuilder2 ->
// @oozcitak/url); they only use URL and URLSearchParams.
export const URL = globalThis.URL;
export const URLSearchParams = globalThis.URLSearchParams;
export default { URL, URLSearchParams };
