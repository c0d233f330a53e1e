package org.apache.pdfbox.pdmodel;
/** Compile-only stub: ARX's certificate (PDF) export is not used here; pdfbox-app is absent from the mirror. */
public class PDDocument {
    public static PDDocument load(java.io.File f) throws java.io.IOException { throw new UnsupportedOperationException(); }
    public static PDDocument load(java.io.InputStream s) throws java.io.IOException { throw new UnsupportedOperationException(); }
    public void save(java.io.OutputStream s) throws java.io.IOException { throw new UnsupportedOperationException(); }
    public void close() throws java.io.IOException { }
}
