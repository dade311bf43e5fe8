# Where corpora live (ESPnet convention): one variable per downloaded corpus, for the egs2/<corpus> recipes that
# read it. The default corpus is synthesised locally and needs no download.
