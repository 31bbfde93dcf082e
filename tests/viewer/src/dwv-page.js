// The same check in dwv (DICOM Web Viewer, npm `dwv`): loads the source images, then the SEG,
// into one layer group, as dwv's own viewer does; dwv's SEG reader supports volumes only (SEG
// frames indexed by Image Position). run.mjs drives it through window.dwvCheck.
import { App, AppOptions, ViewConfig, Index } from 'dwv';

let app;

function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function loadUrls(urls) {
  return new Promise((resolve, reject) => {
    let error;
    const onError = (e) => {
      error = e.error || e;
    };
    const onEnd = () => {
      app.removeEventListener('loadend', onEnd);
      app.removeEventListener('error', onError);
      if (error) reject(new Error(`dwv could not load ${urls[0]}: ${error.message || error}`));
      else resolve();
    };
    app.addEventListener('loadend', onEnd);
    app.addEventListener('error', onError);
    app.loadURLs(urls);
  });
}

function describe(id) {
  const data = app.getData(id);
  const geometry = data.image.getGeometry();
  return {
    id,
    modality: data.image.getMeta().Modality,
    size: geometry.getSize().getValues(),
    origins: geometry.getOrigins().map((o) => [o.getX(), o.getY(), o.getZ()]),
  };
}

function nextFrame() {
  return new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
}

// Loads the case into a layer group of width x height pixels, segment fill opaque.
async function load(spec) {
  const group = document.getElementById('layerGroup0');
  group.style.width = `${spec.width}px`;
  group.style.height = `${spec.height}px`;
  app = new App();
  const config = new ViewConfig('layerGroup0');
  config.opacity = 1;
  config.fillOpacity = 1;
  config.contourThickness = 0;
  app.init(new AppOptions({ '*': [config] }));
  await loadUrls(spec.sources);
  await loadUrls([spec.seg]);
  const ids = app.getDataIds();
  const data = ids.map(describe);
  const mask = data.find((d) => d.modality === 'SEG');
  const image = data.find((d) => d.modality !== 'SEG');
  if (!mask || !image) throw new Error(`dwv loaded ${JSON.stringify(data.map((d) => d.modality))}`);
  const maskImage = app.getData(mask.id).image;
  const buffer = maskImage.getBuffer();
  mask.buffer = toBase64(new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength));
  mask.bytesPerValue = buffer.BYTES_PER_ELEMENT;
  mask.segments = (maskImage.getMeta().custom?.segments || []).map((s) => ({
    number: s.number,
    label: s.label,
    rgb: s.displayRGBValue ? [s.displayRGBValue.r, s.displayRGBValue.g, s.displayRGBValue.b] : null,
  }));
  await nextFrame();
  return { image, mask };
}

// Shows slice `index` of the source volume (dwv's own slice order).
async function show(index) {
  const layer = app.getViewLayersByDataId(app.getDataIds()[0])[0];
  const controller = layer.getViewController();
  const current = controller.getCurrentIndex().getValues();
  current[2] = index;
  controller.setCurrentIndex(new Index(current));
  await nextFrame();
  return controller.getCurrentIndex().getValues();
}

window.dwvCheck = { load, show };
document.title = 'ready';
