"""deidpipe's version, in a module of its own: the writer stamps it into every file's Implementation Version Name
(0002,0013) and the header engine into De-identification Method (0012,0063), without importing the top-level
package (whose lazy names lead back to them)."""

__version__ = "0.1.0"
