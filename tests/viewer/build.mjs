// Bundles the viewer pages into dist/: src/page.js (cornerstone3D, OHIF's SEG path) with
// dicom-image-loader's decode worker side by side (the loader starts its worker from
// new URL('./decodeImageFrameWorker.js', import.meta.url), which resolves next to the page
// bundle), and src/dwv-page.js (dwv).
import { build } from 'esbuild';

await build({
  entryPoints: {
    page: 'src/page.js',
    'dwv-page': 'src/dwv-page.js',
    decodeImageFrameWorker:
      'node_modules/@cornerstonejs/dicom-image-loader/dist/esm/decodeImageFrameWorker.js',
  },
  bundle: true,
  format: 'esm',
  splitting: true,
  outdir: 'dist',
  target: 'es2022',
  loader: { '.wasm': 'file' },
  platform: 'browser',
  // The emscripten codecs require() these only when they run under node.
  external: ['fs', 'path', 'module', 'crypto', 'worker_threads'],
  // Node built-ins that vtk.js's XML writer (xmlbuilder2) requires at load time.
  alias: { url: './src/shims/url.js', events: 'events' },
  logLevel: 'warning',
  define: { 'process.env.NODE_ENV': '"production"' },
});
