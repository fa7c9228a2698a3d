"""The x4 diffusion upscaler, adapted to video: `config` (UpscalerConfig), `bundle` (the hub-layout
parts + prompt embedding, load and save), `student` (the temporal student's conv_in surgery),
`video` (`VideoUpscaler`: conditioning, the UNets, the samplers, restore_frame / restore_clip)."""
