package org.apache.hadoop.io;
/** Compile-only stub: hadoop-core is absent from the mirror; ARX's classification code is not used here. */
public interface Writable {
    void write(java.io.DataOutput out) throws java.io.IOException;
    void readFields(java.io.DataInput in) throws java.io.IOException;
}
