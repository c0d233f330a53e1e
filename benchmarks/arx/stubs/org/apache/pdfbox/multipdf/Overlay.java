package org.apache.pdfbox.multipdf;
/** Compile-only stub (see PDDocument). */
public class Overlay {
    public enum Position { FOREGROUND, BACKGROUND }
    public void setInputPDF(org.apache.pdfbox.pdmodel.PDDocument d) { throw new UnsupportedOperationException(); }
    public void setAllPagesOverlayPDF(org.apache.pdfbox.pdmodel.PDDocument d) { throw new UnsupportedOperationException(); }
    public void setOverlayPosition(Position p) { throw new UnsupportedOperationException(); }
    public org.apache.pdfbox.pdmodel.PDDocument overlay(java.util.Map<Integer, String> m) throws java.io.IOException { throw new UnsupportedOperationException(); }
}
