package org.apache.pdfbox.pdmodel.font;
/** Compile-only stub (see PDDocument). */
public abstract class PDFont { }
