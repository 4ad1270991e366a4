from builder.component import Builder
from common.component import main_for

main_for(Builder)
