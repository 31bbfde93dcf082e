"""proxyseg_model: the Proxy Prompt Generator (PPG) with SAM, after the paper
"Proxy Prompt: Endowing SAM & SAM 2 with Auto-Interactive-Prompt for Medical Segmentation".

One network part per file (as segment-anything's modeling/ does):
  scan.py  selective scan (chunked, exportable) and its sequential reference
  csm.py   Contextual Selective Module: VisionMamba, BridgeUnit, SelectiveMap
  ccm.py   Contextual Colorization Module (dual-reverse cross-attention)
  lora.py  LoRA adapters for SAM's encoder and decoder (merged at export)
  sam.py   SAM wrapper (segment-anything's ImageEncoderViT + MaskDecoder)
  ppg.py   composition: ProxyPromptSAM
  build.py one factory per bundle size
"""
