// The viewer page: loads source images and a DICOM SEG the way OHIF's SEG extension does
// (cornerstone3D stack viewport, @cornerstonejs/dicom-image-loader over WADO-URI,
// @cornerstonejs/adapters createFromDicomSegImageId, segment colours from the SEG's
// Recommended Display CIELab Value via dcmjs dicomlab2RGB, a labelmap representation with a
// colour LUT) and renders the overlay. run.mjs drives it through window.viewerCheck.
import {
  init as csInit,
  RenderingEngine,
  Enums,
  metaData,
  imageLoader,
  utilities,
  eventTarget,
} from '@cornerstonejs/core';
import {
  init as toolsInit,
  segmentation,
  Enums as ToolEnums,
} from '@cornerstonejs/tools';
import { init as dicomLoaderInit } from '@cornerstonejs/dicom-image-loader';
import { utilities as metadataUtils } from '@cornerstonejs/metadata';
import { adaptersSEG } from '@cornerstonejs/adapters';
import dcmjs from 'dcmjs';

const LABELMAP = ToolEnums.SegmentationRepresentations.Labelmap;
const VIEWPORT_ID = 'vp';
const SEGMENTATION_ID = 'seg';
let engine;
let state;

// OHIF's dicomlabToRGB (extensions/cornerstone-dicom-seg/src/utils/dicomlabToRGB.ts).
function dicomlabToRGB(cielab) {
  return dcmjs.data.Colors.dicomlab2RGB(cielab).map((x) => Math.round(x * 255));
}

// OHIF answers 'generalImageModule' from its own metadata store, with the SOP Instance UID the
// adapters map SEG frames by (buildSopUIDImageIdIndexMap); cornerstone's default providers
// leave it out, so add OHIF's fields the same way.
function generalImageModuleProvider(type, imageId) {
  if (type !== 'generalImageModule' || typeof imageId !== 'string') return undefined;
  const instance = metaData.get('instance', imageId.replace(/[?&]frame=\d+$/, ''));
  if (!instance) return undefined;
  return {
    sopInstanceUID: instance.SOPInstanceUID,
    instanceNumber: instance.InstanceNumber,
    lossyImageCompression: instance.LossyImageCompression,
    lossyImageCompressionRatio: instance.LossyImageCompressionRatio,
    lossyImageCompressionMethod: instance.LossyImageCompressionMethod,
  };
}

async function setup() {
  await csInit();
  toolsInit();
  dicomLoaderInit({ maxWebWorkers: 1 });
  metaData.addProvider(generalImageModuleProvider, 10000);
  metaData.addProvider(ohifInstanceProvider, 10000);
}

// Fetches a Part 10 file and registers it with the metadata provider under `imageId`, as the
// WADO-URI loader does on first load; returns its Number of Frames.
async function addInstance(url, imageId) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const buffer = await response.arrayBuffer();
  await metadataUtils.addDicomPart10Instance(imageId, buffer.slice(0));
  const instance = metaData.get('instance', imageId);
  if (!instance) throw new Error(`no instance metadata for ${imageId}`);
  const n = Number(instance.NumberOfFrames);
  return { frames: Number.isFinite(n) && n > 0 ? n : 1, buffer };
}

// OHIF keeps every instance's metadata in its DicomMetadataStore, naturalized by dcmjs, and
// registers the SEG's under its imageId ('instance', _ensureSegInstanceMetadataAvailable in
// getSopClassHandlerModule) before calling the adapters; do the same for the SEG.
const ohifInstances = new Map();
function ohifInstanceProvider(type, imageId) {
  if (type !== 'instance' || typeof imageId !== 'string') return undefined;
  return ohifInstances.get(imageId.replace(/[?&]frame=\d+$/, ''));
}
function addOhifInstance(imageId, buffer) {
  const { DicomMessage, DicomMetaDictionary } = dcmjs.data;
  const dicomData = DicomMessage.readFile(buffer);
  const dataset = DicomMetaDictionary.naturalizeDataset(dicomData.dict);
  dataset._meta = DicomMetaDictionary.namifyDataset(dicomData.meta);
  ohifInstances.set(imageId, dataset);
}

// Source image ids as OHIF's local/WADO-URI data source makes them: one per instance, or one
// per frame (`?frame=N`, 1-based) for a multi-frame instance; ordered along the slice normal
// for a volume (as OHIF's stack sort by Image Position does), else by instance and frame.
async function sourceImageIds(urls) {
  const ids = [];
  for (const url of urls) {
    const base = `wadouri:${url}`;
    const n = (await addInstance(url, base)).frames;
    if (n === 1) {
      ids.push(base);
    } else {
      for (let f = 1; f <= n; f++) ids.push(`${base}?frame=${f}`);
    }
  }
  for (const id of ids) await imageLoader.loadAndCacheImage(id);
  const plane = (id) => metaData.get('imagePlaneModule', id) || {};
  const p0 = plane(ids[0]);
  if (urls.length > 1 && p0.rowCosines && p0.columnCosines && p0.imagePositionPatient) {
    const [r, c] = [p0.rowCosines, p0.columnCosines];
    const normal = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]];
    const dist = (id) => {
      const p = plane(id).imagePositionPatient;
      return p[0] * normal[0] + p[1] * normal[1] + p[2] * normal[2];
    };
    ids.sort((a, b) => dist(a) - dist(b));
  }
  return ids;
}

function imageInfo(id) {
  const general = metaData.get('generalImageModule', id) || {};
  const m = id.match(/[?&]frame=(\d+)/);
  return { imageId: id, sopInstanceUID: general.sopInstanceUID, frame: m ? Number(m[1]) : 1 };
}

function waitRendered(element) {
  return new Promise((resolve) => {
    const done = () => {
      element.removeEventListener(Enums.Events.IMAGE_RENDERED, done);
      // Two animation frames: the labelmap actors are updated in the same render pass, the
      // second frame makes sure the composited canvas is on screen for the screenshot.
      requestAnimationFrame(() => requestAnimationFrame(resolve));
    };
    element.addEventListener(Enums.Events.IMAGE_RENDERED, done);
  });
}

// Loads the case: sources and SEG, the segmentation on a stack viewport of width x height CSS
// pixels. Returns what the adapters produced (segments, labelmaps) for run.mjs to save.
async function load(spec) {
  if (!engine) {
    await setup();
    engine = new RenderingEngine('viewer-check');
  }
  const element = document.getElementById('viewport');
  element.style.width = `${spec.width}px`;
  element.style.height = `${spec.height}px`;
  const imageIds = await sourceImageIds(spec.sources);

  // The SEG, as OHIF loads it: its imageId, per-frame imageIds, createFromDicomSegImageId.
  const segImageId = `wadouri:${spec.seg}`;
  const { frames: segFrames, buffer: segBuffer } = await addInstance(spec.seg, segImageId);
  addOhifInstance(segImageId, segBuffer);
  const frameImageIds = [];
  for (let f = 1; f <= segFrames; f++) frameImageIds.push(`${segImageId}?frame=${f}`);
  const results = await adaptersSEG.Cornerstone3D.Segmentation.createFromDicomSegImageId(
    imageIds,
    segImageId,
    {
      metadataProvider: metaData,
      tolerance: 0.001,
      parserType: 'bitmap',
      frameImageIds,
      concurrency: 16,
    },
  );

  // Colours and segments as OHIF's getSopClassHandlerModule + buildSEGSegmentationData.
  const colorLUT = [[0, 0, 0, 0]];
  const segments = {};
  const segmentInfo = [];
  results.segMetadata.data.forEach((data, i) => {
    if (i === 0 || !data) return;
    const lab = data.RecommendedDisplayCIELabValue;
    const rgb = lab ? dicomlabToRGB(lab) : null;
    const rgba = rgb ? [...rgb, 255] : null;
    colorLUT.push(rgba || [255, 0, 255, 255]);
    const segmentIndex = Number(data.SegmentNumber);
    segments[segmentIndex] = {
      segmentIndex,
      label: data.SegmentLabel || `Segment ${segmentIndex}`,
      locked: false,
      active: false,
      cachedStats: {},
    };
    segmentInfo.push({ segmentIndex, label: data.SegmentLabel, cielab: lab || null, rgba });
  });
  const layers = results.labelMapImages;
  const derivedImageIds = layers.flat().map((image) => image.imageId);

  const viewportInput = {
    viewportId: VIEWPORT_ID,
    type: Enums.ViewportType.STACK,
    element,
    defaultOptions: { background: [0, 0, 0] },
  };
  engine.enableElement(viewportInput);
  const viewport = engine.getViewport(VIEWPORT_ID);
  const firstRender = waitRendered(element);
  await viewport.setStack(imageIds, 0);
  viewport.render();
  await firstRender;

  segmentation.addSegmentations([
    {
      segmentationId: SEGMENTATION_ID,
      representation: {
        type: LABELMAP,
        data: { imageIds: derivedImageIds, referencedImageIds: imageIds },
      },
      config: { label: 'SEG', segments },
    },
  ]);
  await segmentation.addLabelmapRepresentationToViewportMap({
    [VIEWPORT_ID]: [{ segmentationId: SEGMENTATION_ID, config: { colorLUTOrIndex: colorLUT } }],
  });
  state = { element, viewport, imageIds, segmentInfo };

  // The labelmaps the adapters produced, per layer and stack position (segment numbers).
  const labelmaps = layers.map((layer) =>
    layer.map((image) => {
      const data = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
      return { referencedImageId: image.referencedImageId, data: toBase64(Uint8Array.from(data)) };
    }),
  );
  return {
    images: imageIds.map(imageInfo),
    segments: segmentInfo,
    overlappingSegments: !!results.overlappingSegments,
    segmentsOnFrame: results.segmentsOnFrame,
    labelmaps,
    rows: metaData.get('imagePixelModule', imageIds[0]).rows,
    columns: metaData.get('imagePixelModule', imageIds[0]).columns,
  };
}

function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

// Shows stack position `index` with `style` ('ohif': OHIF's default look, every segment;
// 'solid': opaque fill, no outline, only `segmentIndex` visible) and resolves once rendered,
// with the canvas position of the image's pixel centres (0, 0) and (columns-1, rows-1).
async function show(index, style, segmentIndex) {
  const { element, viewport, imageIds, segmentInfo } = state;
  const spec = { viewportId: VIEWPORT_ID, segmentationId: SEGMENTATION_ID, type: LABELMAP };
  if (style === 'solid') {
    segmentation.config.style.setStyle(spec, {
      renderFill: true,
      fillAlpha: 1,
      renderFillInactive: true,
      fillAlphaInactive: 1,
      renderOutline: false,
      renderOutlineInactive: false,
    });
  } else {
    segmentation.config.style.resetToGlobalStyle();
  }
  for (const s of segmentInfo) {
    const visible = style !== 'solid' || s.segmentIndex === segmentIndex;
    segmentation.config.visibility.setSegmentIndexVisibility(
      VIEWPORT_ID,
      { segmentationId: SEGMENTATION_ID, type: LABELMAP },
      s.segmentIndex,
      visible,
    );
  }
  const rendered = waitRendered(element);
  if (viewport.getCurrentImageIdIndex() !== index) {
    await viewport.setImageIdIndex(index);
  }
  viewport.render();
  await rendered;
  const id = imageIds[index];
  const { rows, columns } = metaData.get('imagePixelModule', id);
  const toCanvas = (x, y) => Array.from(viewport.worldToCanvas(utilities.imageToWorldCoords(id, [x, y])));
  return {
    imageId: viewport.getCurrentImageId(),
    first: toCanvas(0.5, 0.5),
    last: toCanvas(columns - 0.5, rows - 0.5),
    canvas: [element.clientWidth, element.clientHeight],
  };
}

window.viewerCheck = { load, show };
eventTarget.addEventListener('error', (e) => console.error('cornerstone error', e));
document.title = 'ready';
